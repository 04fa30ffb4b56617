"""Spoken-digit recognition from MFCC frames (GRU over frames; mean/std + logistic regression)."""
