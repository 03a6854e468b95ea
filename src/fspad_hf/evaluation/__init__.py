"""evaluation/: measuring heads. The Spec-Bench-format benchmark (interleaved, resumable), the demo, and the
`evaluate` metric."""
