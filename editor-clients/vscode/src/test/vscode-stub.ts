// The parts of the `vscode` API the extension's modules use, for tests under plain node.
import Module = require('module');

export class Position {
  constructor(readonly line: number, readonly character: number) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(a: number | Position, b: number | Position, c?: number, d?: number) {
    if (typeof a === 'number') {
      this.start = new Position(a, b as number);
      this.end = new Position(c as number, d as number);
    } else {
      this.start = a;
      this.end = b as Position;
    }
  }
}

export class InlineCompletionItem {
  constructor(readonly insertText: string, readonly range?: Range) {}
}

export enum InlineCompletionTriggerKind { Invoke = 0, Automatic = 1 }

export class EventEmitter<T> {
  private listeners: ((value: T) => void)[] = [];
  readonly event = (listener: (value: T) => void) => {
    this.listeners.push(listener);
    return { dispose: () => { this.listeners = this.listeners.filter((l) => l !== listener); } };
  };
  fire(value: T): void {
    this.listeners.forEach((l) => l(value));
  }
}

export class CancellationTokenSource {
  private listeners: (() => void)[] = [];
  readonly token = {
    isCancellationRequested: false,
    onCancellationRequested: (listener: () => void) => {
      this.listeners.push(listener);
      return { dispose: () => undefined };
    },
  };
  cancel(): void {
    this.token.isCancellationRequested = true;
    this.listeners.forEach((l) => l());
  }
}

export class Uri {
  constructor(readonly scheme: string, readonly path: string, readonly query = '') {}
  static parse(value: string): Uri {
    const match = /^([\w+.-]+):(\/\/)?([^?]*)\??(.*)$/.exec(value);
    return new Uri(match ? match[1] : 'file', match ? match[3] : value, match ? match[4] : '');
  }
  static from(parts: { scheme: string; path: string; query?: string }): Uri {
    return new Uri(parts.scheme, parts.path, parts.query ?? '');
  }
  toString(): string {
    return `${this.scheme}://${this.path}${this.query ? `?${this.query}` : ''}`;
  }
}

const stub = { Position, Range, InlineCompletionItem, InlineCompletionTriggerKind, EventEmitter, CancellationTokenSource, Uri };

// `import * as vscode from 'vscode'` in the modules under test resolves to this stub.
const loader = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
const original = loader._load;
loader._load = function (request: string, ...rest: unknown[]) {
  return request === 'vscode' ? stub : original.call(this, request, ...rest);
};

export function document(uri: string, text: string): any {
  return { uri: Uri.parse(uri), getText: () => text, languageId: 'python', version: 1 };
}
