"""ALBERT pretraining from raw text: corpus reading, SOP pairs, n-gram masking, MLM+SOP model."""
