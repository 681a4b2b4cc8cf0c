"""An agent program that knows nothing of areal-env: only the official ``openai`` client.

Run per episode by the ``program`` agent (``agents/program_adapter.py``): the task
arrives on stdin, the endpoint in ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (the
episode's session), and the answer is the last line printed. The adapter records
every token the model generates for it, then the env scores the answer::

    python trainers/grpo.py agent.name=program \
        'agent.kwargs.command=[python,examples/openai_client_agent.py]'

Try it by hand against a served model (``python -m areal_env.serve``)::

    echo '37+48=' | OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x \
        python examples/openai_client_agent.py
"""

from __future__ import annotations

import sys

from openai import OpenAI


def main() -> int:
    task = sys.stdin.read()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    reply = client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": task}]
    )
    print((reply.choices[0].message.content or "").strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
