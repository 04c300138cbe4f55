"""Fixed benchmark prompts from different domains (chat messages; the chat template is applied)."""
PROMPTS = {
    "math": "A train travels 120 km in 1.5 hours, then 80 km in 1 hour. What is its average speed? Show the steps.",
    "code": "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "chat": "What are three good habits for staying focused while working from home?",
    "summary": "Summarize in two sentences: The mitochondrion is an organelle found in most eukaryotic cells. "
               "It generates most of the cell's supply of adenosine triphosphate, used as a source of chemical energy.",
    "facts": "List the planets of the solar system in order from the Sun, with one fact about each.",
}
