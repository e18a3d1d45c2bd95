"""Small shared helpers with no IP-Adapter knowledge: image tensors and model folders."""
