"""Types and tensor functions the components exchange: AudioState, BackboneInfo, factored vocabulary logits, encoder windows."""
