"""The paper's experiments: inertia (Figure 2), heavy-hitter ablation, ReLU vs SwiGLU,
applicability. Each stores its inputs, parameters and results in the store's results table
(rerun with the same settings = cache hit) and ends with numbers and a plain verdict."""
