import './vscode-stub';
import { CancellationTokenSource, document, InlineCompletionTriggerKind, Position, Range, Uri } from './vscode-stub';

import assert = require('node:assert/strict');
import { test } from 'node:test';

import { ChatPreview, runChat } from '../chat';
import { InlineProvider } from '../inline';
import { serverCommand, serverSettings } from '../settings';
import { formatStatus, ServerStatus } from '../status';
import { CursorReporter } from '../warm';

const config = (values: Record<string, unknown>) => ({ get: <T>(key: string) => values[key] as T | undefined });

test('server settings keep known keys only and drop empty ones', () => {
  assert.deepEqual(serverSettings(config({
    serverPath: '/x/aipc-lsp', model: ' my.gguf ', engine: '', device: 'NPU',
    serverSettings: { completion: { max_tokens: 32 } },
  })), { completion: { max_tokens: 32 }, model: 'my.gguf', device: 'NPU' });
  assert.deepEqual(serverSettings(config({})), {});
});

test('server command defaults to aipc-lsp serve', () => {
  assert.deepEqual(serverCommand(config({})), { command: 'aipc-lsp', args: ['serve'] });
  assert.deepEqual(serverCommand(config({ serverPath: 'python3', serverArgs: ['-m', 'aipc_lsp', 'serve'] })),
    { command: 'python3', args: ['-m', 'aipc_lsp', 'serve'] });
});

const READY: ServerStatus = {
  version: '0.1.0', model: 'default', device: 'CPU', ready: true, error: null, liveJobs: [],
  slots: [
    { slot: 'openvino-npu', engine: 'openvino', device: 'NPU', model: '/m.gguf', state: 'ready', busy: false,
      served: 3, cancelled: 1, ttft_ms: 41.4, tokens_per_s: 55.2 },
    { slot: 'openvino-cpu', engine: 'openvino', device: 'CPU', model: '/m.gguf', state: 'ready', busy: true,
      served: 1, cancelled: 0, ttft_ms: null, tokens_per_s: null },
  ],
};

test('status bar shows the busy slot, else the preferred one, and the last latency', () => {
  assert.equal(formatStatus(READY, 87.6).text, '$(sparkle) aipc CPU · 88 ms');
  const idle = { ...READY, slots: READY.slots.map((s) => ({ ...s, busy: false })) };
  assert.equal(formatStatus(idle).text, '$(sparkle) aipc NPU');
  assert.match(formatStatus(idle).tooltip, /openvino-npu \(openvino on NPU, ready\): 41 ms to first token, 55 tok\/s/);
  assert.equal(formatStatus({ ...READY, ready: false }).text, '$(sync~spin) aipc: loading');
  assert.match(formatStatus({ ...READY, error: 'model not found' }).tooltip, /model not found/);
  assert.equal(formatStatus(undefined).text, '$(circle-slash) aipc');
});

test('inline provider sends LSP params and maps items to ghost text', async () => {
  const sent: any[] = [];
  const provider = new InlineProvider(async (method, params) => {
    sent.push({ method, params });
    return { items: [{ insertText: 'return a + b' },
      { insertText: { value: 'x' }, range: { start: { line: 1, character: 0 }, end: { line: 1, character: 4 } } }] };
  });
  const items = await provider.provideInlineCompletionItems(document('file:///a.py', 'def f():\n    '),
    new Position(1, 4) as any, { triggerKind: InlineCompletionTriggerKind.Automatic } as any,
    new CancellationTokenSource().token as any);
  assert.deepEqual(sent, [{ method: 'textDocument/inlineCompletion', params: {
    textDocument: { uri: 'file:///a.py' }, position: { line: 1, character: 4 }, context: { triggerKind: 2 } } }]);
  assert.equal(items.length, 2);
  assert.equal(items[0].insertText, 'return a + b');
  assert.deepEqual(items[0].range, new Range(1, 4, 1, 4));
  assert.deepEqual(items[1].range, new Range(1, 0, 1, 4));
});

test('inline provider gives nothing when disabled, failing or cancelled', async () => {
  const doc = document('file:///a.py', 'x');
  const ctx = { triggerKind: InlineCompletionTriggerKind.Invoke } as any;
  const cancelled = new CancellationTokenSource();
  cancelled.cancel();
  const ok = async () => [{ insertText: 'y' }];
  assert.deepEqual(await new InlineProvider(ok, () => false).provideInlineCompletionItems(
    doc, new Position(0, 1) as any, ctx, new CancellationTokenSource().token as any), []);
  assert.deepEqual(await new InlineProvider(async () => { throw new Error('cancelled'); }).provideInlineCompletionItems(
    doc, new Position(0, 1) as any, ctx, new CancellationTokenSource().token as any), []);
  assert.deepEqual(await new InlineProvider(ok).provideInlineCompletionItems(
    doc, new Position(0, 1) as any, ctx, cancelled.token as any), []);
});

test('runChat streams partial results through its own token and returns the answer', async () => {
  const handlers = new Map<string, (v: { text: string }) => void>();
  let params: any;
  const shown: string[] = [];
  const result = await runChat({
    onProgress: (token, handler) => {
      handlers.set(token, handler);
      return { dispose: () => handlers.delete(token) };
    },
    sendRequest: async (method, p: any) => {
      params = p;
      assert.equal(method, 'aipc/inlineChat');
      handlers.get(p.partialResultToken)!({ text: 'Hel' });
      handlers.get(p.partialResultToken)!({ text: 'lo' });
      return { text: 'Hello', mode: 'ask', edit: null, firstTokenMs: 5, totalMs: 9 };
    },
  }, { uri: 'file:///a.py', range: { start: { line: 0, character: 0 }, end: { line: 1, character: 0 } },
    instruction: 'why?' }, (text) => shown.push(text));
  assert.deepEqual(shown, ['Hel', 'Hello']);
  assert.equal(result.text, 'Hello');
  assert.equal(params.instruction, 'why?');
  assert.equal(handlers.size, 0, 'the progress handler is disposed');
});

test('chat preview serves and announces updated content', () => {
  const preview = new ChatPreview();
  const uri = Uri.from({ scheme: ChatPreview.scheme, path: '/answer.md' }) as any;
  const fired: string[] = [];
  preview.onDidChange((u) => fired.push(u.toString()));
  preview.set(uri, ChatPreview.render('add a docstring', '```py\nx\n```', 'first token 5 ms'));
  assert.equal(preview.provideTextDocumentContent(uri),
    '> add a docstring\n\n```py\nx\n```\n\n---\nfirst token 5 ms\n');
  assert.deepEqual(fired, ['aipc-chat:///answer.md']);
});

test('a resting cursor is reported once as aipc/warm; a moving one, other schemes and disabled are not', async () => {
  const sent: [string, any][] = [];
  let enabled = true;
  const reporter = new CursorReporter((method, params) => sent.push([method, params]), () => enabled, 20);
  const editor = (uri: string, line: number, character: number, version = 1) => ({
    document: { uri: Uri.parse(uri), version }, selection: { active: { line, character } },
  });
  const settle = () => new Promise((resolve) => setTimeout(resolve, 60));
  reporter.schedule(editor('file:///p/a.py', 1, 2));
  reporter.schedule(editor('file:///p/a.py', 3, 4)); // moved on before resting: only the last counts
  await settle();
  assert.deepEqual(sent, [['aipc/warm', { textDocument: { uri: 'file:///p/a.py' }, position: { line: 3, character: 4 } }]]);
  reporter.schedule(editor('file:///p/a.py', 3, 4)); // the same place again: nothing new to warm
  reporter.schedule(editor('output:///log', 0, 0)); // not a document the server has
  await settle();
  assert.equal(sent.length, 1);
  reporter.schedule(editor('file:///p/a.py', 3, 4, 2)); // the same place in an edited document
  await settle();
  assert.equal(sent.length, 2);
  enabled = false;
  reporter.schedule(editor('file:///p/b.py', 0, 0));
  await settle();
  assert.equal(sent.length, 2);
  enabled = true;
  reporter.schedule(editor('file:///p/b.py', 0, 0));
  reporter.dispose(); // the extension deactivated before it fired
  await settle();
  assert.equal(sent.length, 2);
});
