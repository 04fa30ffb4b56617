"""Day-ahead electricity demand forecasting: recurrent encoder vs naive and ridge baselines."""
