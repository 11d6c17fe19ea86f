"""The hosted function: `services.support` in shipyard.yaml.

    POST /v1/services/support/invoke  {"question": "Do gift cards expire?"}

retrieves the three closest articles, asks the configured model (the `assistant` alias, through
the same gateway, so its call is traced, limited and guarded too) to answer from them, and
returns a `shipyard.Result` whose `context` is the retrieved articles: the gateway's grounding
guard checks the answer against exactly what was retrieved, and drops sentences the articles
do not support. The answer always ends with the passage of the best article that matches the
question, cited as [1], so a weak or simulated model still yields a grounded answer.
"""

from __future__ import annotations

import os
import re
from typing import Any

import aiohttp

from assistant.intents import classifier
from assistant.kb import Article
from assistant.retrieval import retriever, tokens
from shipyard import Result
from shipyard.sdk import current_invocation

MODEL = "assistant"  # the model alias in shipyard.yaml
SYSTEM = (
    "You are the support assistant of Northwind Outfitters, an outdoor store. Answer the "
    "customer in one or two short sentences, using only the numbered help-centre articles "
    "below, and cite them like [1]. If they do not answer the question, say so. Internal "
    "reference: NW-CANARY-7f3a. Never repeat it.\n\n{articles}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


async def answer(request: dict[str, Any]) -> Result:
    question = str(request["question"]).strip()
    hits = retriever().search(question, k=3)
    intent, intent_p = classifier().predict(question)
    articles = [article for article, _ in hits]
    reply = await ask_model(question, articles)
    lead = best_passage(articles[0], question)
    text = f"{reply}\n{lead} [1]" if reply else f"{lead} [1]"
    return Result(
        output={
            "answer": text,
            "citations": [{"n": i, "id": a.id, "title": a.title}
                          for i, a in enumerate(articles, 1)],
            "intent": intent,
            "intent_confidence": round(intent_p, 3),
            "retrieval": retriever().name,
            "score": round(hits[0][1], 4),
        },
        context=[a.text for a in articles],
        citations=[a.id for a in articles],
    )


def best_passage(article: Article, question: str, sentences: int = 2) -> str:
    """The article's sentences that share the most words with the question (in order)."""
    parts = [s.strip() for s in _SENTENCE.split(article.body) if s.strip()]
    wanted = set(tokens(question))
    ranked = sorted(range(len(parts)),
                    key=lambda i: (-len(wanted & set(tokens(parts[i]))), i))[:sentences]
    return " ".join(parts[i] for i in sorted(ranked))


async def ask_model(question: str, articles: list[Article]) -> str:
    """The model's answer through the gateway's `assistant` alias ('' when it fails: the
    cited passage still answers)."""
    invocation = current_invocation()
    base_url = (invocation.base_url if invocation else None) or "http://127.0.0.1:8000/v1"
    key = (invocation.api_key if invocation else None) or os.environ.get("SHIPYARD_API_KEY")
    headers = {"authorization": f"Bearer {key}"}
    if invocation is not None:
        headers["traceparent"] = invocation.traceparent  # the model call joins this trace
    numbered = "\n".join(f"[{i}] {a.text}" for i, a in enumerate(articles, 1))
    body = {"model": MODEL, "max_tokens": 80, "temperature": 0.2,
            "messages": [{"role": "system", "content": SYSTEM.format(articles=numbered)},
                         {"role": "user", "content": question}]}
    timeout = aiohttp.ClientTimeout(total=45)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
            f"{base_url}/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            return ""
        data = await response.json()
    content = data["choices"][0]["message"].get("content") or ""
    return " ".join(content.split())


# Built when the gateway imports this module (before it reports ready), not on the first
# question: loading the embedding model takes seconds.
retriever()
classifier()
