"""Using a trained model: retrieval, fold-in, the Recommender, batch export, the HTTP service and the explorer."""
