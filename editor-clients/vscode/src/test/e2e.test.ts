// The extension's request code against the real server (python -m aipc_lsp serve) and the real
// default model, over vscode-languageserver-protocol: the JSON-RPC layer VS Code's client uses.
import './vscode-stub';
import { document, InlineCompletionTriggerKind, Position } from './vscode-stub';

import assert = require('node:assert/strict');
import { ChildProcess, spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import {
  CancellationTokenSource, createProtocolConnection, ProgressType, ProtocolConnection, StreamMessageReader,
  StreamMessageWriter,
} from 'vscode-languageserver-protocol/node';

import { runChat } from '../chat';
import { InlineProvider } from '../inline';
import { serverSettings } from '../settings';
import { formatStatus, ServerStatus } from '../status';

// pytest passes the interpreter of its virtual environment.
const command: string[] = JSON.parse(process.env.AIPC_SERVER_CMD ?? '["python3", "-m", "aipc_lsp", "serve"]');
const URI = 'file:///project/vscode_e2e.py';
const SOURCE = 'import os\n\n\ndef add(a, b):\n    return a + b\n\n\ndef list_python_files(folder):\n    ';
let server: ChildProcess;
let connection: ProtocolConnection;
const errors: string[] = [];

async function waitReady(): Promise<ServerStatus> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const status = await connection.sendRequest<ServerStatus>('aipc/status', {});
    if (status.ready || status.error || Date.now() > deadline) {
      return status;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

before(async () => {
  server = spawn(command[0], command.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  connection = createProtocolConnection(new StreamMessageReader(server.stdout!), new StreamMessageWriter(server.stdin!));
  // What VS Code answers for section "aipc", filtered by the extension's middleware.
  const settings = { get: <T>(key: string) => ({ device: 'CPU', serverPath: 'ignored',
    serverSettings: { completion: { max_tokens: 32 }, chat: { max_tokens: 64 } } } as Record<string, unknown>)[key] as T };
  connection.onRequest('workspace/configuration', (params: { items: unknown[] }) =>
    params.items.map(() => serverSettings(settings)));
  connection.onRequest('window/workDoneProgress/create', () => null);
  connection.onNotification('window/showMessage', (params: { type: number; message: string }) => {
    if (params.type <= 2) {
      errors.push(params.message); // errors and warnings: e.g. settings the server rejected
    }
  });
  connection.listen();
  await connection.sendRequest('initialize', {
    processId: process.pid, rootUri: null, workspaceFolders: null,
    initializationOptions: serverSettings(settings),
    capabilities: {
      workspace: { configuration: true, applyEdit: true, workspaceEdit: { documentChanges: true } },
      window: { workDoneProgress: true },
      textDocument: { synchronization: { dynamicRegistration: true } },
    },
  });
  await connection.sendNotification('initialized', {});
  const status = await waitReady();
  assert.ok(status.ready, JSON.stringify(status));
  await connection.sendNotification('textDocument/didOpen', {
    textDocument: { uri: URI, languageId: 'python', version: 1, text: SOURCE },
  });
});

after(async () => {
  try {
    await connection.sendRequest('shutdown');
    await connection.sendNotification('exit');
  } finally {
    connection.dispose();
    server.kill();
  }
});

test('ghost text from the real model through the extension provider', async () => {
  const provider = new InlineProvider((method, params) => connection.sendRequest(method, params));
  const items = await provider.provideInlineCompletionItems(document(URI, SOURCE), new Position(8, 4) as any,
    { triggerKind: InlineCompletionTriggerKind.Automatic } as any, new CancellationTokenSource().token as any);
  assert.equal(items.length, 1);
  assert.ok(String(items[0].insertText).trim().length > 0, JSON.stringify(items));
  const status = await connection.sendRequest<ServerStatus>('aipc/status', {});
  assert.equal(formatStatus(status, 42).text, '$(sparkle) aipc CPU · 42 ms');
  assert.ok(status.slots[0].served >= 1);
});

test('inline chat streams into the preview and ends with a versioned edit', async () => {
  const shown: string[] = [];
  const started = Date.now();
  let firstPieceMs = 0;
  const result = await runChat({
    sendRequest: (method, params) => connection.sendRequest(method, params),
    onProgress: (token, handler) => connection.onProgress(new ProgressType<{ text: string }>(), token, handler),
  }, {
    uri: URI, range: { start: { line: 3, character: 0 }, end: { line: 5, character: 0 } },
    instruction: 'Add a docstring to this function',
  }, (text) => {
    firstPieceMs ||= Date.now() - started;
    shown.push(text);
  });
  console.log(`vscode e2e: first chat piece after ${firstPieceMs} ms, answer after ${Date.now() - started} ms`);
  assert.ok(shown.length >= 3, `streamed ${shown.length} times`);
  assert.equal(shown[shown.length - 1], result.text);
  assert.equal(result.mode, 'edit');
  const edit = result.edit as any;
  assert.equal(edit.documentChanges[0].textDocument.version, 1);
  assert.deepEqual(edit.documentChanges[0].edits[0].range, { start: { line: 3, character: 0 }, end: { line: 5, character: 0 } });
  assert.match(edit.documentChanges[0].edits[0].newText, /def add/);
});

test('cancelling the chat answers RequestCancelled', async () => {
  const source = new CancellationTokenSource();
  let pieces = 0;
  const subscription = connection.onNotification('aipc/chatChunk', (params: { id: number; text: string }) => {
    assert.equal(typeof params.id, 'number');
    pieces += 1;
    source.cancel(); // as the user pressing Cancel on the progress notification
  });
  await assert.rejects(connection.sendRequest('aipc/inlineChat', {
    textDocument: { uri: URI }, range: { start: { line: 0, character: 0 }, end: { line: 8, character: 0 } },
    instruction: 'Explain every line of this file', mode: 'ask',
  }, source.token), (error: { code: number }) => error.code === -32800);
  subscription.dispose();
  assert.ok(pieces >= 1);
  const status = await connection.sendRequest<ServerStatus>('aipc/status', {});
  // (The server may be computing ahead for the ghost text above: background work of its own.)
  assert.deepEqual(status.liveJobs.filter((job) => job.kind === 'chat'), []);
});

test('bad params are a JSON-RPC error, not silence', async () => {
  await assert.rejects(connection.sendRequest('aipc/inlineChat', { textDocument: { uri: URI } }),
    (error: { code: number }) => error.code === -32602);
  assert.deepEqual(errors, []);
});
