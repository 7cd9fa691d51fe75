// aipc-lsp for VS Code: starts the server over stdio, ghost text, inline chat, status bar.
import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification, LanguageClient, LanguageClientOptions, ProgressType,
  ServerOptions, TransportKind, WorkspaceEdit as LspWorkspaceEdit,
} from 'vscode-languageclient/node';

import { ChatPreview, ChatResult, runChat } from './chat';
import { InlineProvider } from './inline';
import { serverCommand, serverSettings } from './settings';
import { formatStatus, ServerStatus } from './status';
import { CursorReporter } from './warm';

const SECTION = 'aipc';
let client: LanguageClient | undefined;
let output: vscode.OutputChannel;
let statusItem: vscode.StatusBarItem;
let lastLatencyMs: number | undefined;
let pending: { edit: unknown; preview: vscode.Uri } | undefined;

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function createClient(): LanguageClient {
  const { command, args } = serverCommand(config());
  const serverOptions: ServerOptions = { command, args, transport: TransportKind.stdio };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    outputChannel: output, // the server's stderr log lands here
    initializationOptions: serverSettings(config()),
    middleware: {
      workspace: {
        // Answer the server's workspace/configuration with the keys it knows only.
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          return Array.isArray(result)
            ? result.map((value, i) => (params.items[i].section === SECTION ? serverSettings(config()) : value))
            : result;
        },
      },
      // Ghost text is the main way in; the popup item is opt-in.
      provideCompletionItem: (document, position, context, token, next) =>
        config().get<boolean>('completion.popup') ? next(document, position, context, token) : [],
    },
  };
  return new LanguageClient('aipc', 'aipc-lsp', serverOptions, clientOptions);
}

async function refreshStatus(): Promise<void> {
  let status: ServerStatus | undefined;
  try {
    status = client?.isRunning() ? await client.sendRequest<ServerStatus>('aipc/status', {}) : undefined;
  } catch {
    status = undefined;
  }
  const { text, tooltip } = formatStatus(status, lastLatencyMs);
  statusItem.text = text;
  statusItem.tooltip = tooltip;
}

async function inlineChat(preview: ChatPreview): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor || !client) {
    return;
  }
  const instruction = await vscode.window.showInputBox({
    prompt: 'aipc: what should happen to the selection?', placeHolder: 'add a docstring / why does this fail?',
  });
  if (!instruction) {
    return;
  }
  const { selection, document } = editor;
  const uri = vscode.Uri.from({ scheme: ChatPreview.scheme, path: '/answer.md', query: String(Date.now()) });
  preview.set(uri, ChatPreview.render(instruction, '…'));
  await vscode.window.showTextDocument(uri, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true, preview: true });
  const connection = {
    sendRequest: (method: string, params: unknown, token?: vscode.CancellationToken) =>
      client!.sendRequest<ChatResult>(method, params, token),
    onProgress: (token: string, handler: (value: { text: string }) => void) =>
      client!.onProgress(new ProgressType<{ text: string }>(), token, handler),
  };
  let result: ChatResult;
  try {
    result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: 'aipc: thinking…', cancellable: true },
      (_progress, token) => runChat(connection, {
        uri: document.uri.toString(),
        range: { start: selection.start, end: selection.end },
        instruction,
      }, (text) => preview.set(uri, ChatPreview.render(instruction, text)), token),
    );
  } catch (error) {
    preview.set(uri, ChatPreview.render(instruction, '', `aipc: ${(error as Error).message}`));
    return;
  }
  const timing = `first token ${Math.round(result.firstTokenMs ?? 0)} ms, total ${Math.round(result.totalMs)} ms`;
  lastLatencyMs = result.firstTokenMs ?? lastLatencyMs;
  void refreshStatus();
  if (!result.edit) {
    preview.set(uri, ChatPreview.render(instruction, result.text, result.editDropped ?? timing));
    return;
  }
  pending = { edit: result.edit, preview: uri };
  preview.set(uri, ChatPreview.render(instruction, result.text, `${timing}. Accept: "aipc: Accept Chat Edit".`));
  const choice = await vscode.window.showInformationMessage('aipc: apply the edit to the selection?', 'Accept', 'Discard');
  if (choice === 'Accept') {
    await acceptChat();
  } else if (choice === 'Discard') {
    pending = undefined;
  }
}

async function acceptChat(): Promise<void> {
  if (!pending || !client) {
    vscode.window.showInformationMessage('aipc: no chat edit to accept');
    return;
  }
  const edit = await client.protocol2CodeConverter.asWorkspaceEdit(pending.edit as LspWorkspaceEdit);
  pending = undefined;
  if (!(await vscode.workspace.applyEdit(edit))) {
    vscode.window.showWarningMessage('aipc: the document changed since the answer; the edit was not applied');
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('aipc-lsp');
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = 'aipc.showLog';
  statusItem.show();
  const preview = new ChatPreview();
  const inline = new InlineProvider(
    (method, params, token) => client!.sendRequest(method, params, token),
    () => !!client?.isRunning() && config().get<boolean>('inlineCompletion.enabled', true),
    (ms) => { lastLatencyMs = ms; void refreshStatus(); },
  );
  const timer = setInterval(() => void refreshStatus(), 5000);
  const warm = new CursorReporter(
    (method, params) => { if (client?.isRunning()) { void client.sendNotification(method, params); } },
    () => config().get<boolean>('inlineCompletion.enabled', true),
  );
  context.subscriptions.push(
    warm,
    vscode.window.onDidChangeActiveTextEditor((editor) => warm.schedule(editor)),
    vscode.window.onDidChangeTextEditorSelection((event) => warm.schedule(event.textEditor)),
    output, statusItem, { dispose: () => clearInterval(timer) },
    vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, inline),
    vscode.workspace.registerTextDocumentContentProvider(ChatPreview.scheme, preview),
    vscode.commands.registerCommand('aipc.inlineChat', () => inlineChat(preview)),
    vscode.commands.registerCommand('aipc.acceptChat', acceptChat),
    vscode.commands.registerCommand('aipc.discardChat', () => { pending = undefined; }),
    vscode.commands.registerCommand('aipc.showLog', () => output.show()),
    vscode.commands.registerCommand('aipc.restartServer', async () => {
      await client?.stop();
      client = createClient();
      await client.start();
    }),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION) || !client) {
        return;
      }
      if (event.affectsConfiguration('aipc.serverPath') || event.affectsConfiguration('aipc.serverArgs')) {
        await vscode.commands.executeCommand('aipc.restartServer');
        return;
      }
      // The server pulls the new values through workspace/configuration.
      await client.sendNotification(DidChangeConfigurationNotification.type, { settings: null });
    }),
  );
  client = createClient();
  try {
    await client.start();
  } catch (error) {
    vscode.window.showErrorMessage(`aipc-lsp did not start (${(error as Error).message}); check aipc.serverPath.`);
  }
  void refreshStatus();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
  client = undefined;
}
