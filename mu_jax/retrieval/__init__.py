"""Face retrieval: embedding models, retrieval metrics, identity unlearning."""
