from rag.errors import QuestionError


def check_question(question: str | None, max_chars: int) -> str:
    text = " ".join((question or "").split())
    if not text:
        raise QuestionError("the question is empty: type a question about ML papers")
    if len(text) > max_chars:
        raise QuestionError(f"the question is {len(text)} characters; the limit is {max_chars} (RAG_MAX_QUESTION_CHARS)")
    return text
