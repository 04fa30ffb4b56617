"""Sentiment classification of movie reviews (GRU over SentencePiece ids; TF-IDF baseline)."""
