"""AsymCache for SGLang 0.5.16: a prefix cache that knows what each KV block costs to rebuild."""

__version__ = "0.1.0"
