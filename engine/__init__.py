"""unseen.engine"""
