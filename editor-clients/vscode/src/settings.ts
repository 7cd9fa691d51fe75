// What the server gets as initializationOptions and as the answer to workspace/configuration
// (section "aipc"): only keys it knows. Client-only settings (serverPath, ...) stay here, since
// the server reports unknown keys to the user.
export interface ConfigLike {
  get<T>(key: string): T | undefined;
}

export function serverSettings(config: ConfigLike): Record<string, unknown> {
  const extra = config.get<Record<string, unknown>>('serverSettings') ?? {};
  const out: Record<string, unknown> = { ...extra };
  for (const key of ['model', 'engine', 'device']) {
    const value = config.get<string>(key);
    if (typeof value === 'string' && value.trim() !== '') {
      out[key] = value.trim();
    }
  }
  return out;
}

export function serverCommand(config: ConfigLike): { command: string; args: string[] } {
  const command = (config.get<string>('serverPath') ?? '').trim() || 'aipc-lsp';
  const args = config.get<string[]>('serverArgs');
  return { command, args: Array.isArray(args) && args.length ? args : ['serve'] };
}
