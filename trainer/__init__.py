"""Training: matrix factorisation (mf.py), the feature CNNs (cnn.py, features.py) and their evaluation."""
