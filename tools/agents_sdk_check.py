#!/usr/bin/env python3
"""OpenAI's Agents SDK (`pip install openai-agents`, not a test dependency) against a running dlora server's
`/v1/responses`: an agent with a function tool (the SDK sends the call and its output back as input items each turn),
a plain agent, and the same streamed. Not part of the test command; a manual check of a real client.

usage: agents_sdk_check.py URL MODEL      e.g. http://127.0.0.1:8000/v1 SmolLM2-135M-Instruct.Q4_1
Exits non-zero when a turn fails or the tool is never called.
"""
import asyncio
import sys

from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from agents.exceptions import MaxTurnsExceeded
from openai import AsyncOpenAI


async def main(url, model):
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=url, api_key="x")
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"It is 18 degrees and sunny in {city}."

    tools = Agent(name="weather", instructions="Answer weather questions with the get_weather tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=model, openai_client=client),
                  model_settings=ModelSettings(temperature=0, max_tokens=80, tool_choice="required", parallel_tool_calls=False))
    try:
        r = await Runner.run(tools, "What is the weather in Paris?", max_turns=3)
        print("tool agent:", repr(r.final_output)[:200])
    except MaxTurnsExceeded:
        print("tool agent: max turns (a small model keeps calling)")
    print("tool calls:", calls)
    plain = Agent(name="plain", instructions="Be brief.", model=OpenAIResponsesModel(model=model, openai_client=client),
                  model_settings=ModelSettings(temperature=0, max_tokens=30))
    r = await Runner.run(plain, "Name a fruit.")
    print("plain agent:", repr(r.final_output))
    s = Runner.run_streamed(plain, "Name a color.")
    events = [e async for e in s.stream_events()]
    print("streamed:", len(events), "events,", repr(s.final_output))
    return bool(calls) and bool(r.final_output) and bool(s.final_output)


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(main(sys.argv[1], sys.argv[2])) else 1)
