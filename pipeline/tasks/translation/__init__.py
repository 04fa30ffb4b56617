"""German-to-English translation (attention encoder-decoder; dictionary baseline)."""
