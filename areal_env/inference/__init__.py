"""Inference: the engine protocol, the local transformers engine, the chat client."""
