"""How a question becomes a grounded answer: retrieve, decide whether the book covers it,
build the prompt from untrusted sources, stream the model's text with `[n]` citations
checked on the fly (`pipeline.AnswerPipeline`; prompt and citations in `grounding`).
"""
