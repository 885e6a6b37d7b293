"""A trace-driven discrete-event simulator of one SGLang 0.5.16 server, on the CPU.

The scheduling decisions are SGLang's own code (``Req``, ``PrefillAdder``, the token-ratio
tracker, the KV allocator) and so are the caches (``RadixCache`` with each eviction policy, and
AsymCache's ``HoleAwareRadixCache`` through its admission hooks); only the model forward is
replaced, by a step time from a latency model fitted to a GPU run's trace. The event loop is
hand-written: the scheduler is one synchronous step loop whose only other events are arrivals,
which a heap covers (simpy's processes would add a dependency and nothing the loop needs; vidur
models vLLM-style block managers and schedulers and has no prefix cache to plug these into).
"""
