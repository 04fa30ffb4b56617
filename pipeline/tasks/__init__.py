"""Task adapters: what each task gives the shared trainer and evaluator."""
