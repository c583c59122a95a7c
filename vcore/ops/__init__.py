"""Model-side maths: per-token losses, chunked cross-entropy, the forward pass that yields them, the blocked
attention the jvp probe differentiates through, and weight statistics. Tensors in, tensors out."""
