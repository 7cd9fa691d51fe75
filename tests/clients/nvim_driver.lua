-- Headless Neovim (0.11+) driver for tests/clients/test_neovim.py.
--
-- Run as:  nvim --headless --clean -i NONE -n -c 'luafile tests/clients/nvim_driver.lua'
--
-- Uses Neovim's own LSP client with the project's real config
-- (editor-clients/nvim/lsp/aipc_lsp.lua), opens a file, places the cursor,
-- sends a raw textDocument/inlineCompletion and a textDocument/completion
-- request, writes everything as JSON to $AIPC_NVIM_OUT and quits.
--
-- Parameters (environment variables):
--   AIPC_NVIM_RTP           folder containing lsp/aipc_lsp.lua (required)
--   AIPC_NVIM_CMD           JSON array: server command overriding `cmd` (optional)
--   AIPC_NVIM_FILE          file to :edit (required)
--   AIPC_NVIM_OUT           where to write the JSON result (required)
--   AIPC_NVIM_LINE          0-based cursor line (default: last line)
--   AIPC_NVIM_COL           0-based byte column (default: end of that line)
--   AIPC_NVIM_INIT_OPTIONS  JSON object overriding `init_options` (optional)
--   AIPC_NVIM_SETTINGS      JSON object overriding `settings` (optional)
--   AIPC_NVIM_TIMEOUT_MS    per-request timeout (default 120000)
--   AIPC_NVIM_ATTACH_MS     how long to wait for the client to attach (default 60000)
--   AIPC_NVIM_SETTLE_MS     extra wait after attaching, before the requests (default 0;
--                           a debugging aid: the test itself requests right away, as a user could)
--   AIPC_NVIM_LSP_LOG       path of the LSP log file (optional)
--   AIPC_NVIM_LOG_LEVEL     vim.lsp log level name, e.g. 'DEBUG' (default 'WARN')

local NAME = 'aipc_lsp'
local out_path = assert(vim.env.AIPC_NVIM_OUT, 'AIPC_NVIM_OUT is not set')
local report = { ok = false, nvim_version = tostring(vim.version()) }

local function now_ms()
  return vim.uv.hrtime() / 1e6
end

local function decode_env(name)
  local raw = vim.env[name]
  if raw == nil or raw == '' then
    return nil
  end
  return vim.json.decode(raw)
end

local function request(client, bufnr, method, params, timeout_ms)
  local t0 = now_ms()
  local resp, err = client:request_sync(method, params, timeout_ms, bufnr)
  local entry = { elapsed_ms = math.floor(now_ms() - t0) }
  if resp == nil then
    -- 'timeout' or 'interrupted'
    entry.client_error = tostring(err)
  else
    entry.err = resp.err
    entry.result = resp.result == nil and vim.NIL or resp.result
  end
  return entry
end

local function main()
  local rtp = assert(vim.env.AIPC_NVIM_RTP, 'AIPC_NVIM_RTP is not set')
  local file = assert(vim.env.AIPC_NVIM_FILE, 'AIPC_NVIM_FILE is not set')
  local timeout_ms = tonumber(vim.env.AIPC_NVIM_TIMEOUT_MS) or 120000
  local attach_ms = tonumber(vim.env.AIPC_NVIM_ATTACH_MS) or 60000

  if vim.env.AIPC_NVIM_LSP_LOG and vim.env.AIPC_NVIM_LSP_LOG ~= '' then
    local log = require('vim.lsp.log')
    if log._set_filename then -- private API, present in 0.11
      log._set_filename(vim.env.AIPC_NVIM_LSP_LOG)
    end
  end
  vim.lsp.log.set_level(vim.env.AIPC_NVIM_LOG_LEVEL or 'WARN')

  vim.o.swapfile = false
  -- Allow the cursor one past the last character in Normal mode, so that
  -- make_position_params() can express "end of line" without Insert mode.
  vim.o.virtualedit = 'onemore'

  -- 1. The project's real config, found through the runtimepath.
  vim.opt.rtp:prepend(rtp)
  local found = vim.api.nvim_get_runtime_file('lsp/' .. NAME .. '.lua', false)
  report.config_file = found[1]
  assert(found[1], 'lsp/' .. NAME .. '.lua not found on the runtimepath')

  -- 2. Test overrides, merged over lsp/aipc_lsp.lua by vim.lsp.config().
  local overrides = {}
  local cmd = decode_env('AIPC_NVIM_CMD')
  if cmd then
    overrides.cmd = cmd
  end
  local init_options = decode_env('AIPC_NVIM_INIT_OPTIONS')
  if init_options then
    overrides.init_options = init_options
  end
  local settings = decode_env('AIPC_NVIM_SETTINGS')
  if settings then
    overrides.settings = settings
  end
  -- Record what is really put on the wire in `initialize`.
  local started = false
  overrides.before_init = function(params, _)
    started = true -- the server process is running and `initialize` is about to be sent
    report.sent_initialization_options = params.initializationOptions == nil and vim.NIL
      or params.initializationOptions
    report.sent_client_info = params.clientInfo
    report.offered_position_encodings = vim.tbl_get(params, 'capabilities', 'general', 'positionEncodings')
  end
  -- Notice a server that dies instead of waiting for the attach timeout.
  overrides.on_exit = function(code, signal)
    report.server_exit = { code = code, signal = signal }
  end
  vim.lsp.config(NAME, overrides)

  local resolved = vim.lsp.config[NAME]
  report.resolved_config = {
    cmd = type(resolved.cmd) == 'table' and resolved.cmd or tostring(resolved.cmd),
    filetypes = resolved.filetypes,
    root_markers = resolved.root_markers,
    init_options = resolved.init_options,
    settings = resolved.settings,
  }

  vim.lsp.enable(NAME)

  -- 3. Open the file; the FileType autocmd installed by vim.lsp.enable() starts the client.
  vim.cmd.edit(vim.fn.fnameescape(file))
  local bufnr = vim.api.nvim_get_current_buf()
  report.filetype = vim.bo[bufnr].filetype

  local client
  local t0 = now_ms()
  local attached = false
  vim.wait(attach_ms, function()
    client = vim.lsp.get_clients({ bufnr = bufnr, name = NAME })[1]
    attached = client ~= nil
      and client.initialized == true
      and vim.lsp.buf_is_attached(bufnr, client.id)
    -- A bad `cmd` never gets as far as before_init; don't wait the full attach time for it.
    local never_started = not started and now_ms() - t0 > 5000
    return attached or report.server_exit ~= nil or never_started
  end, 50)
  report.attach_ms = math.floor(now_ms() - t0)
  if not attached then
    error(
      ('client %s did not attach (waited %d ms, filetype=%q, started=%s, initialized=%s, server exit=%s); see the LSP log'):format(
        NAME,
        report.attach_ms,
        report.filetype,
        tostring(started),
        tostring(client ~= nil and client.initialized),
        vim.inspect(report.server_exit)
      )
    )
  end

  report.client = {
    id = client.id,
    name = client.name,
    offset_encoding = client.offset_encoding,
    server_info = client.server_info,
    settings = client.settings,
    inline_completion_provider = client.server_capabilities.inlineCompletionProvider or vim.NIL,
    completion_provider = client.server_capabilities.completionProvider or vim.NIL,
    supports_inline_completion = client:supports_method('textDocument/inlineCompletion', bufnr),
    supports_completion = client:supports_method('textDocument/completion', bufnr),
  }

  local settle_ms = tonumber(vim.env.AIPC_NVIM_SETTLE_MS) or 0
  if settle_ms > 0 then
    vim.wait(settle_ms, function()
      return false
    end, 50)
  end

  -- 4. Cursor: default = end of the last line.
  local line_count = vim.api.nvim_buf_line_count(bufnr)
  local line0 = tonumber(vim.env.AIPC_NVIM_LINE) or (line_count - 1)
  local text = vim.api.nvim_buf_get_lines(bufnr, line0, line0 + 1, true)[1]
  local col0 = tonumber(vim.env.AIPC_NVIM_COL) or #text
  vim.api.nvim_win_set_cursor(0, { line0 + 1, col0 })
  report.cursor = vim.api.nvim_win_get_cursor(0)

  local base = vim.lsp.util.make_position_params(0, client.offset_encoding)
  report.position = base.position

  -- 5. textDocument/inlineCompletion (LSP 3.18). Neovim 0.11 has no
  --    vim.lsp.inline_completion, so send the raw request.
  local inline_params = {
    textDocument = base.textDocument,
    position = base.position,
    context = { triggerKind = 1 }, -- Invoked
  }
  report.inline = request(client, bufnr, 'textDocument/inlineCompletion', inline_params, timeout_ms)

  -- 6. textDocument/completion.
  local completion_params = {
    textDocument = base.textDocument,
    position = base.position,
    context = { triggerKind = 1 }, -- Invoked
  }
  report.completion = request(client, bufnr, 'textDocument/completion', completion_params, timeout_ms)

  report.ok = true
end

local ok, err = xpcall(main, debug.traceback)
if not ok then
  report.error = tostring(err)
end
vim.fn.writefile({ vim.json.encode(report) }, out_path)

-- Shut the server down cleanly before leaving.
local clients = vim.lsp.get_clients({ name = NAME })
for _, c in ipairs(clients) do
  c:stop()
end
vim.wait(5000, function()
  for _, c in ipairs(clients) do
    if not c:is_stopped() then
      return false
    end
  end
  return true
end, 50)
vim.cmd('qa!')
