"""Meta-learning algorithms behind one interface: `adapt(support) -> learner`, `meta_loss(learner, query)`."""
