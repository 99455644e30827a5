"""unseen.benchmarks"""
