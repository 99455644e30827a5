"""unseen.engine.models"""
