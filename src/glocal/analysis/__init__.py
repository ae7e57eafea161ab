"""Measurements of models: complexity (parameters, counted MACs) and attention."""
