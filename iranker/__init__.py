"""iranker: one LLM ranking model for recommendation, LLM routing and passage re-ranking."""
__version__ = "0.1.0"
