"""unseen.weights"""
