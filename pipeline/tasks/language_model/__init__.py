"""Language modeling of Shakespeare's plays (LSTM over subwords; Kneser-Ney baseline)."""
