// The status bar text for an `aipc/status` answer (see docs/PROTOCOL.md).
export interface SlotStatus {
  slot: string;
  engine: string;
  device: string;
  model: string;
  state: string;
  busy: boolean;
  served: number;
  cancelled: number;
  ttft_ms: number | null;
  tokens_per_s: number | null;
}

export interface ServerStatus {
  version: string;
  model: string;
  device: string;
  ready: boolean;
  error: string | null;
  slots: SlotStatus[];
  liveJobs: { uri: string; kind: string }[];
}

export function formatStatus(status: ServerStatus | undefined, lastLatencyMs?: number): { text: string; tooltip: string } {
  if (!status) {
    return { text: '$(circle-slash) aipc', tooltip: 'aipc-lsp is not running' };
  }
  if (status.error) {
    return { text: '$(error) aipc', tooltip: `aipc-lsp has no model: ${status.error}` };
  }
  if (!status.ready) {
    return { text: '$(sync~spin) aipc: loading', tooltip: `aipc-lsp ${status.version}: loading ${status.model}` };
  }
  // The slot doing the work now, else the first ready one (the preferred device).
  const slot = status.slots.find((s) => s.busy) ?? status.slots.find((s) => s.state === 'ready') ?? status.slots[0];
  const latency = lastLatencyMs !== undefined ? ` · ${Math.round(lastLatencyMs)} ms` : '';
  const text = `$(sparkle) aipc ${slot ? slot.device : status.device}${latency}`;
  const lines = [`aipc-lsp ${status.version}`];
  for (const s of status.slots) {
    const ttft = s.ttft_ms !== null ? `${Math.round(s.ttft_ms)} ms to first token` : 'no request yet';
    const rate = s.tokens_per_s !== null ? `, ${s.tokens_per_s.toFixed(0)} tok/s` : '';
    lines.push(`${s.slot} (${s.engine} on ${s.device}, ${s.state}${s.busy ? ', busy' : ''}): ${ttft}${rate}; ` +
      `${s.served} served, ${s.cancelled} cancelled`);
    lines.push(`  ${s.model}`);
  }
  return { text, tooltip: lines.join('\n') };
}
