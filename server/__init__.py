"""unseen.server"""
