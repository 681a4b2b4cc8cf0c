"""Remote inference: vLLM and SGLang servers behind the InferenceEngine protocol.

``api`` speaks each server's HTTP dialect, ``router`` spreads requests over
servers, ``engine`` implements interruptible, versioned generation on top, and
``launch`` starts servers as subprocesses when the config asks for it.
"""
