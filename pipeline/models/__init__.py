"""Pure model builders: params in, uncompiled `keras.Model` out (Functional API, named layers)."""
