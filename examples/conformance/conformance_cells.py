"""The cells the official MCP conformance suite's server scenarios expect (names and behaviour from its spec).

Served by `cellmono serve --settings examples/conformance/settings.ini`; `.ci/conformance` runs the suite."""
from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cellmono.core.cell import Cell, Empty, completes, prompt, resource, tool
from cellmono.core.context import CompletionRequest, Context, ToolContent, elicitation, list_roots, sampling
from cellmono.gateway.subscriptions import announce_update

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _text(text: str) -> ToolContent:
    return ToolContent(content=[{"type": "text", "text": text}])


class Contact(BaseModel):
    """A contact whose JSON Schema is the suite's 2020-12 fixture, passed through verbatim."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The fixture schema itself (pydantic would rewrite `$ref`s and drop the 2020-12 keywords)."""
        return json.loads(json.dumps(JSON_SCHEMA_2020_12))


class Prompted(BaseModel):
    prompt: str = ""


class Message(BaseModel):
    message: str = ""


class Region(BaseModel):
    region: str = Field(default="<none>", description="Mirrored into the Mcp-Param-Region header",
                        json_schema_extra={"x-mcp-header": "Region"})


class TemplateId(BaseModel):
    id: str


class TwoArguments(BaseModel):
    arg1: str
    arg2: str


class ResourceUri(BaseModel):
    resourceUri: str


class ConformanceCell(Cell):
    """Tools, resources, prompts and completions named as the conformance scenarios expect."""

    name = "conformance"

    # -- tools ------------------------------------------------------------------------------------
    @tool(requires=())
    async def test_simple_text(self, request: Empty) -> ToolContent:
        """Tests simple text content response"""
        return _text("This is a simple text response for testing.")

    @tool(requires=())
    async def test_image_content(self, request: Empty) -> ToolContent:
        """Tests image content response"""
        return ToolContent(content=[{"type": "image", "data": PNG, "mimeType": "image/png"}])

    @tool(requires=())
    async def test_audio_content(self, request: Empty) -> ToolContent:
        """Tests audio content response"""
        return ToolContent(content=[{"type": "audio", "data": WAV, "mimeType": "audio/wav"}])

    @tool(requires=())
    async def test_embedded_resource(self, request: Empty) -> ToolContent:
        """Tests embedded resource content response"""
        return ToolContent(content=[{"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}}])

    @tool(requires=())
    async def test_multiple_content_types(self, request: Empty) -> ToolContent:
        """Tests response with multiple content types (text, image, resource)"""
        return ToolContent(content=[
            {"type": "text", "text": "Multiple content types test:"},
            {"type": "image", "data": PNG, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "test://mixed-content-resource", "mimeType": "application/json",
                                              "text": '{"test": "data", "value": 123}'}}])

    @tool(requires=())
    async def test_error_handling(self, request: Empty) -> ToolContent:
        """Tests error response handling"""
        raise RuntimeError("This tool intentionally returns an error for testing")

    @tool(requires=())
    async def json_schema_2020_12_tool(self, request: Contact) -> ToolContent:
        """Tests JSON Schema 2020-12 keyword preservation in tools/list"""
        return _text("json_schema_2020_12_tool")

    @tool(requires=())
    async def test_x_mcp_header(self, request: Region) -> ToolContent:
        """Tests SEP-2243 Mcp-Param-* server-side validation"""
        return _text(f"region={request.region}")

    @tool(requires=(), client="sampling")
    async def test_missing_capability(self, request: Empty) -> ToolContent:
        """Needs the client's sampling capability: a client without it gets -32021 before the cell runs"""
        return _text("the client declared sampling")

    @tool(requires=(), client="elicitation")
    async def test_streaming_elicitation(self, request: Empty) -> ToolContent:
        """Diagnostic: its answer stream carries no request of the server's own"""
        return _text("streamed without independent requests")

    @tool(requires=())
    async def test_logging_tool(self, request: Empty) -> ToolContent:
        """Diagnostic: sends no log message to a client that set no log level"""
        return _text("nothing logged")

    # -- resources --------------------------------------------------------------------------------
    @resource("test://static-text", requires=(), ttl=60, description="A static text resource for testing")
    async def static_text(self, request: Empty) -> str:
        return "This is the content of the static text resource."

    @resource("test://static-binary", requires=(), mime_type="image/png", ttl=60,
              description="A static binary resource (image) for testing")
    async def static_binary(self, request: Empty) -> bytes:
        return base64.b64decode(PNG)

    @resource("test://template/{id}/data", requires=(), mime_type="application/json",
              description="A resource template with parameter substitution")
    async def template(self, request: TemplateId) -> str:
        return json.dumps({"id": request.id, "templateTest": True, "data": f"Data for ID: {request.id}"})

    @resource("test://watched-resource", requires=(), description="A resource that can be subscribed to for updates")
    async def watched_resource(self, request: Empty) -> str:
        return "Watched resource content"

    @tool(requires=())
    async def test_update_resource(self, request: ResourceUri) -> ToolContent:
        """Announces that a resource changed: its subscribers get notifications/resources/updated"""
        await announce_update(self.bus, request.resourceUri)
        return _text(f"announced {request.resourceUri}")

    # -- prompts ----------------------------------------------------------------------------------
    @prompt(requires=(), description="A simple prompt without arguments")
    async def test_simple_prompt(self, request: Empty) -> str:
        return "This is a simple prompt for testing."

    @prompt(requires=(), description="A prompt with required arguments")
    async def test_prompt_with_arguments(self, request: TwoArguments) -> str:
        return f"Prompt with arguments: arg1='{request.arg1}', arg2='{request.arg2}'"

    @prompt(requires=(), description="A prompt that includes an embedded resource")
    async def test_prompt_with_embedded_resource(self, request: ResourceUri) -> list[dict[str, Any]]:
        return [{"role": "user", "content": {"type": "resource", "resource": {
                    "uri": request.resourceUri, "mimeType": "text/plain", "text": "Embedded resource content for testing."}}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}]

    @prompt(requires=(), description="A prompt that includes image content")
    async def test_prompt_with_image(self, request: Empty) -> list[dict[str, Any]]:
        return [{"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}]

    # -- completions ------------------------------------------------------------------------------
    @completes("arg1", prompt="test_prompt_with_arguments", requires=())
    async def complete_arg1(self, request: CompletionRequest) -> list[str]:
        return [value for value in ("paris", "park", "london") if value.startswith(request.value)]

    @completes("id", resource="test://template/{id}/data", requires=())
    async def complete_id(self, request: CompletionRequest) -> list[str]:
        return [value for value in ("123", "124", "200") if value.startswith(request.value)]

    # -- handler contexts: progress, logging, elicitation, sampling, roots, MRTR (cellmono.core.context) ---------
    @tool(requires=())
    async def test_tool_with_progress(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests tool that reports progress notifications"""
        for step in (0, 50, 100):
            await ctx.progress(step, 100, f"Completed step {step} of 100")
            if step < 100:
                await asyncio.sleep(0.05)
        return _text("Progress reported")

    @tool(requires=())
    async def test_tool_with_logging(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests tool that emits log messages during execution"""
        for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.log("info", text)
            if text != "Tool execution completed":
                await asyncio.sleep(0.05)
        return _text("Tool with logging executed successfully")

    @tool(requires=())
    async def test_sampling(self, request: Prompted, ctx: Context) -> ToolContent:
        """Tests server-initiated sampling (LLM completion request)"""
        return _text(f"LLM response: {await ctx.sample(request.prompt, max_tokens=100)}")

    @tool(requires=())
    async def test_elicitation(self, request: Message, ctx: Context) -> ToolContent:
        """Tests server-initiated elicitation (user input request)"""
        answer = await ctx.elicit(request.message, USER_SCHEMA)
        return _text(f"User response: action={answer.get('action')}, content={json.dumps(answer.get('content') or {})}")

    @tool(requires=())
    async def test_elicitation_sep1034_defaults(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests elicitation with default values for all primitive types (SEP-1034)"""
        answer = await ctx.elicit("Please provide user information", DEFAULTS_SCHEMA)
        return _text(f"Elicitation result: action={answer.get('action')}, content={json.dumps(answer.get('content') or {})}")

    @tool(requires=())
    async def test_elicitation_sep1330_enums(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests elicitation with enum schema variations per SEP-1330"""
        answer = await ctx.elicit("Please select values using different enum schema types", ENUMS_SCHEMA)
        return _text(f"Elicitation completed: action={answer.get('action')}, content={json.dumps(answer.get('content') or {})}")

    @tool(requires=())
    async def test_input_required_result_elicitation(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests InputRequiredResult with a single elicitation request"""
        answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name")
        return _text(f"Hello, {(answer.get('content') or {}).get('name', 'stranger')}!")

    @tool(requires=())
    async def test_input_required_result_sampling(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests InputRequiredResult with a single sampling request"""
        return _text(f"Model said: {await ctx.sample('What is the capital of France?', key='capital_question')}")

    @tool(requires=())
    async def test_input_required_result_list_roots(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests InputRequiredResult with a single roots/list request"""
        return _text(f"Client exposed {len(await ctx.roots(key='client_roots'))} root(s).")

    @tool(requires=())
    async def test_input_required_result_request_state(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests requestState round-tripping in the InputRequiredResult flow"""
        previous = ctx.state
        ctx.keep("request-state-nonce")
        await ctx.ask({"confirm": elicitation("Please confirm", OK_SCHEMA)})
        return _text("state-ok: confirmation received" if previous == "request-state-nonce" else "state lost")

    @tool(requires=())
    async def test_input_required_result_multiple_inputs(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests InputRequiredResult carrying elicitation, sampling and roots requests together"""
        await ctx.ask({"user_name": elicitation("What is your name?", NAME_SCHEMA),
                       "greeting": sampling("Generate a greeting", max_tokens=50), "client_roots": list_roots()})
        return _text("All inputs received.")

    @tool(requires=())
    async def test_input_required_result_multi_round(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests a three-round InputRequiredResult flow with evolving requestState"""
        ctx.keep("round-1")
        name = (await ctx.elicit("Step 1: What is your name?", NAME_SCHEMA, key="step1")).get("content") or {}
        ctx.keep("round-2")
        color = (await ctx.elicit("Step 2: What is your favorite color?", COLOR_SCHEMA, key="step2")).get("content") or {}
        return _text(f"{name.get('name')} likes {color.get('color')}.")

    @tool(requires=())
    async def test_input_required_result_tampered_state(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests that the server rejects a tampered requestState echo"""
        ctx.keep("round-1")
        await ctx.ask({"confirm": elicitation("Please confirm", OK_SCHEMA)})
        return _text(f"state-ok: {ctx.state}")

    @tool(requires=())
    async def test_input_required_result_capabilities(self, request: Empty, ctx: Context) -> ToolContent:
        """Tests that inputRequests only include methods the client declared support for"""
        ctx.keep("capability-gated")
        asked = {key: question for key, question, needs in (
            ("sample", sampling("Say hello", max_tokens=50), "sampling"),
            ("ask", elicitation("What is your name?", NAME_SCHEMA), "elicitation")) if ctx.supports(needs)}
        await ctx.ask(asked)
        return _text(f"Answered: {', '.join(asked) or 'nothing asked'}")

    @prompt(requires=(), description="Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)")
    async def test_input_required_result_prompt(self, request: Empty, ctx: Context) -> str:
        answer = await ctx.elicit("What context should the prompt use?", CONTEXT_SCHEMA, key="user_context")
        return f"Use the following context: {(answer.get('content') or {}).get('context', '?')}"


def _form(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


NAME_SCHEMA = _form(name={"type": "string"})
COLOR_SCHEMA = _form(color={"type": "string"})
OK_SCHEMA = _form(ok={"type": "boolean"})
CONTEXT_SCHEMA = _form(context={"type": "string"})
USER_SCHEMA = _form(username={"type": "string", "description": "User's response"},
                    email={"type": "string", "description": "User's email address"})
DEFAULTS_SCHEMA: dict[str, Any] = {"type": "object", "required": [], "properties": {
    "name": {"type": "string", "description": "User name", "default": "John Doe"},
    "age": {"type": "integer", "description": "User age", "default": 30},
    "score": {"type": "number", "description": "User score", "default": 95.5},
    "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"],
               "default": "active"},
    "verified": {"type": "boolean", "description": "Verification status", "default": True}}}
ENUMS_SCHEMA: dict[str, Any] = {"type": "object", "required": [], "properties": {
    "untitledSingle": {"type": "string", "description": "Simple enum without titles", "enum": ["active", "inactive", "pending"]},
    "titledSingle": {"type": "string", "description": "Enum with titled options (oneOf)", "oneOf": [
        {"const": "low", "title": "Low Priority"}, {"const": "medium", "title": "Medium Priority"},
        {"const": "high", "title": "High Priority"}]},
    "legacyEnum": {"type": "string", "description": "Legacy enum with enumNames", "enum": ["small", "medium", "large"],
                   "enumNames": ["Small Size", "Medium Size", "Large Size"]},
    "untitledMulti": {"type": "array", "description": "Multi-select without titles",
                      "items": {"type": "string", "enum": ["read", "write", "execute"]}},
    "titledMulti": {"type": "array", "description": "Multi-select with titled options", "items": {"anyOf": [
        {"const": "feature", "title": "New Feature"}, {"const": "bug", "title": "Bug Fix"},
        {"const": "docs", "title": "Documentation"}]}}}}

# -- tasks (SEP-2663, io.modelcontextprotocol/tasks): the fixtures of the suite's tasks-* scenarios ----------------
import anyio  # noqa: E402  (this block is the tasks helper's; kept apart so the blocks merge cleanly)

from cellmono.core.envelope import Envelope  # noqa: E402
from cellmono.core.errors import ContractError  # noqa: E402
from cellmono.gateway.task_store import task_support  # noqa: E402
from cellmono.gateway.tasks import CONTEXT_HEADER  # noqa: E402


class Name(BaseModel):
    name: str = "World"


class Compute(BaseModel):
    seconds: float = Field(default=0.0, ge=0, le=3600)
    label: str = ""


class Filename(BaseModel):
    filename: str = "file.txt"


class Asked(BaseModel):
    """A tool's answer: content blocks, or (MRTR) the input it still needs, in the handler context's wire shape."""

    model_config = ConfigDict(extra="allow")


def _answers(envelope: Envelope) -> dict[str, Any]:
    """The input responses a resumed task call carries (the handler context's `mcp-context` header)."""
    return dict(json.loads(envelope.headers.get(CONTEXT_HEADER, "{}")).get("answers") or {})


def _confirm(message: str) -> dict[str, Any]:
    return {"method": "elicitation/create", "params": {"mode": "form", "message": message, "requestedSchema": {
        "type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}}}


def _ask(requests: dict[str, Any]) -> Asked:
    return Asked(resultType="input_required", inputRequests=requests)


def _done(text: str) -> Asked:
    return Asked(content=[{"type": "text", "text": text}])


class TasksCell(Cell):
    """Long-running tools for the tasks scenarios: a client declaring the extension gets a task."""

    name = "tasks"

    @tool(requires=())
    async def greet(self, request: Name) -> ToolContent:
        """Greets by name (synchronous only)"""
        return _text(f"Hello, {request.name}!")

    @tool(requires=())
    @task_support("optional")
    async def slow_compute(self, request: Compute) -> ToolContent:
        """Sleeps `seconds`, then answers (a task for a declaring client; cancellable)"""
        await anyio.sleep(request.seconds)
        return _text(f"Computed {request.label or 'result'} after {request.seconds:g}s")

    @tool(requires=())
    @task_support("required", asks_first=True)
    async def test_tool_with_task(self, request: Empty, ctx: Context) -> ToolContent:
        """Asks for a name (a synchronous MRTR round), then runs as a task and greets by that name"""
        answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name")
        await anyio.sleep(0.2)
        return _text(f"Hello, {(answer.get('content') or {}).get('name', 'stranger')}!")

    @tool(requires=())
    @task_support("required")
    async def failing_job(self, request: Empty) -> ToolContent:
        """Fails with a tool error after about a second (runs only as a task)"""
        await anyio.sleep(1.0)
        raise RuntimeError("failing_job failed, as it always does")

    @tool(requires=())
    @task_support("optional")
    async def protocol_error_job(self, request: Empty) -> ToolContent:
        """Breaks its own contract: the task fails with a protocol error, not a tool error"""
        raise ContractError("protocol_error_job broke its contract on purpose")

    @tool(requires=())
    @task_support("required")
    async def confirm_delete(self, request: Filename, envelope: Envelope) -> Asked:
        """Asks for one confirmation (the task parks input_required), then deletes nothing and says so"""
        answer = _answers(envelope).get("confirm")
        if answer is None:
            return _ask({"confirm": _confirm(f"Delete {request.filename}?")})
        return _done(f"{request.filename}: {'deleted' if answer.get('action') == 'accept' else 'kept'}")

    @tool(requires=())
    @task_support("required")
    async def multi_input(self, request: Empty, envelope: Envelope) -> Asked:
        """Asks two questions at once; a client may answer them one tasks/update at a time"""
        answers = _answers(envelope)
        missing = {key: _confirm(f"Question {key}?") for key in ("first", "second") if key not in answers}
        return _ask(missing) if missing else _done(f"answered: {', '.join(sorted(answers))}")
