-- :checkhealth aipc
local util = require('aipc.util')

local M = {}

function M.check()
  local h = vim.health
  h.start('aipc')
  if vim.fn.has('nvim-0.11') == 1 then
    h.ok('Neovim ' .. tostring(vim.version()))
  else
    h.error('Neovim 0.11 or newer is required')
  end
  local config = vim.lsp.config[util.NAME]
  local cmd = config and config.cmd
  if type(cmd) == 'table' and cmd[1] then
    if vim.fn.executable(cmd[1]) == 1 then
      h.ok('server command: ' .. table.concat(cmd, ' '))
    else
      h.error(cmd[1] .. ' is not executable', { 'pip install aipc-lsp, or set cmd with vim.lsp.config("aipc_lsp", {...})' })
    end
  else
    h.warn('no server command configured (is editor-clients/nvim on the runtimepath?)')
  end
  h.info(vim.lsp.inline_completion and 'ghost text: vim.lsp.inline_completion (Neovim 0.12+)'
    or 'ghost text: aipc extmarks (Neovim 0.11)')

  local client = vim.lsp.get_clients({ name = util.NAME })[1]
  if not client then
    h.warn('aipc_lsp is not running: open a file of a configured filetype (vim.lsp.enable("aipc_lsp"))')
    return
  end
  h.ok(string.format('aipc_lsp running (client %d, position encoding %s)', client.id, client.offset_encoding))
  local response = client:request_sync('aipc/status', {}, 5000)
  if not response or response.err then
    h.error('aipc/status failed: ' .. vim.inspect(response and response.err or 'timeout'))
    return
  end
  local status = response.result
  h.info('server ' .. status.version .. ', model ' .. status.model .. ', device ' .. status.device)
  if status.error ~= vim.NIL and status.error then
    h.error('no model: ' .. status.error)
  elseif status.ready then
    h.ok('model ready')
  else
    h.warn('model still loading')
  end
  for _, slot in ipairs(status.slots or {}) do
    local ttft = slot.ttft_ms ~= vim.NIL and slot.ttft_ms and string.format('%d ms to first token', slot.ttft_ms)
      or 'no request yet'
    h.info(string.format('slot %s: %s on %s, %s, %s; model %s', slot.slot, slot.engine, slot.device,
      slot.state, ttft, slot.model))
  end
end

return M
