"""Tasks: what each kind of training defines (model, state, loss, steps, evaluations);
the loop in derm_jax/train/ runs them."""
