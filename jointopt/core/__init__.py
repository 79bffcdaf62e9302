"""Values every stage shares: generations, prompt templates, the Policy and its file format."""
