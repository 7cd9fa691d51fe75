// Ghost text: VS Code asks this provider; it sends textDocument/inlineCompletion (LSP 3.18),
// which vscode-languageclient 9 does not wire up itself.
import * as vscode from 'vscode';

export type SendRequest = (method: string, params: unknown, token?: vscode.CancellationToken) => Promise<any>;

interface LspPosition { line: number; character: number }
interface LspItem {
  insertText: string | { value: string };
  range?: { start: LspPosition; end: LspPosition };
}

export class InlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(
    private readonly send: SendRequest,
    private readonly enabled: () => boolean = () => true,
    private readonly onLatency: (ms: number) => void = () => undefined,
  ) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[]> {
    if (!this.enabled()) {
      return [];
    }
    const started = Date.now();
    let result: { items: LspItem[] } | LspItem[] | null;
    try {
      result = await this.send('textDocument/inlineCompletion', {
        textDocument: { uri: document.uri.toString() },
        position: { line: position.line, character: position.character },
        // VS Code: Invoke = 0, Automatic = 1; LSP: Invoked = 1, Automatic = 2.
        context: { triggerKind: context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? 1 : 2 },
      }, token);
    } catch {
      return []; // cancelled because the user typed on, or the server is restarting
    }
    if (token.isCancellationRequested) {
      return [];
    }
    this.onLatency(Date.now() - started);
    const items = Array.isArray(result) ? result : result?.items ?? [];
    return items.map((item) => {
      const text = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
      const range = item.range
        ? new vscode.Range(item.range.start.line, item.range.start.character, item.range.end.line, item.range.end.character)
        : new vscode.Range(position, position);
      return new vscode.InlineCompletionItem(text, range);
    });
  }
}
