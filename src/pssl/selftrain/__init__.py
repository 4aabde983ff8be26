"""Self-training (Zhu et al., "Improving Semantic Segmentation via Self-Training"): a fine-tuned teacher labels
an unlabelled pool (`teacher`), a student trains on the real set + centroid-sampled pseudo samples (`student`),
and on the demo the pseudo labels are scored against the pool's hidden truth (`quality`)."""
