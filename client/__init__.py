"""unseen.client"""
