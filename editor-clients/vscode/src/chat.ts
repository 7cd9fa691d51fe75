// Inline chat: aipc/inlineChat with a partialResultToken, pieces shown in a preview document
// as they arrive; the WorkspaceEdit in the answer is kept until the user accepts or discards it.
import * as vscode from 'vscode';

export interface ChatConnection {
  sendRequest(method: string, params: unknown, token?: vscode.CancellationToken): Promise<any>;
  onProgress(token: string, handler: (value: { text: string }) => void): { dispose(): void };
}

export interface ChatResult {
  text: string;
  mode: 'edit' | 'ask';
  edit: unknown | null;
  editDropped?: string;
  firstTokenMs: number | null;
  totalMs: number;
}

export interface ChatRequest {
  uri: string;
  range: { start: { line: number; character: number }; end: { line: number; character: number } };
  instruction: string;
}

let counter = 0;

/** Run one chat; `onText` gets the whole answer so far after each streamed piece. */
export async function runChat(
  connection: ChatConnection,
  request: ChatRequest,
  onText: (text: string) => void,
  token?: vscode.CancellationToken,
): Promise<ChatResult> {
  const partialResultToken = `aipc-chat-${process.pid}-${++counter}`;
  let text = '';
  const subscription = connection.onProgress(partialResultToken, (value) => {
    text += value.text;
    onText(text);
  });
  try {
    const result: ChatResult = await connection.sendRequest('aipc/inlineChat', {
      textDocument: { uri: request.uri },
      range: request.range,
      instruction: request.instruction,
      partialResultToken,
    }, token);
    if (result.text !== text) {
      onText(result.text); // a client that lost a piece still shows the whole answer
    }
    return result;
  } finally {
    subscription.dispose();
  }
}

/** Read-only documents under the aipc-chat: scheme that update while an answer streams. */
export class ChatPreview implements vscode.TextDocumentContentProvider {
  static readonly scheme = 'aipc-chat';
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  private readonly contents = new Map<string, string>();
  readonly onDidChange = this.changed.event;

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.contents.get(uri.toString()) ?? '';
  }

  set(uri: vscode.Uri, text: string): void {
    this.contents.set(uri.toString(), text);
    this.changed.fire(uri);
  }

  static render(instruction: string, answer: string, footer = ''): string {
    return `> ${instruction.replace(/\n/g, '\n> ')}\n\n${answer}${footer ? `\n\n---\n${footer}\n` : '\n'}`;
  }
}
