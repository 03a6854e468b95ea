"""decoding/: lossless tree speculative decoding inside generate(). Tree settings, the tree drafter (drafting
interface only), tree tensors, verification and acceptance, KV-cache surgery, the decoding loop, the
`assistant_model=head` route, per-call statistics."""
