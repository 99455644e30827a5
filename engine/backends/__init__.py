"""unseen.engine.backends"""
