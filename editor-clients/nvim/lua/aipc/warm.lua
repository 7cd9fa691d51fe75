-- Tells the server where the cursor rests (aipc/warm), so it can compute the window there while
-- the model is idle: the first keystroke after switching to a buffer or jumping in it then skips
-- the cold prefill (about a second at 1.5k tokens on a small CPU).
local config = require('aipc.config')
local util = require('aipc.util')

local M = {}

-- Per buffer: { timer, sent = 'row:col' }
local state = {}

local function send(bufnr)
  local client = util.client(bufnr)
  local win = vim.api.nvim_get_current_win()
  if not client or vim.api.nvim_win_get_buf(win) ~= bufnr then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  local st = state[bufnr]
  local at = (row - 1) .. ':' .. col .. ':' .. vim.api.nvim_buf_get_changedtick(bufnr)
  if st.sent == at then
    return
  end
  st.sent = at
  client:notify('aipc/warm', {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = util.to_lsp(bufnr, row - 1, col, client.offset_encoding),
  })
end

-- Debounced: a cursor that keeps moving (scrolling, holding a key) is not resting anywhere.
function M.schedule(bufnr)
  local st = state[bufnr]
  if not st or not config.options.warm.enabled then
    return
  end
  st.timer:stop()
  st.timer:start(config.options.warm.delay_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr then
      send(bufnr)
    end
  end))
end

function M.attach(bufnr)
  if state[bufnr] then
    return
  end
  state[bufnr] = { timer = vim.uv.new_timer() }
  local group = vim.api.nvim_create_augroup('aipc_warm_' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'BufEnter', 'CursorMoved' }, {
    group = group, buffer = bufnr,
    callback = function() M.schedule(bufnr) end,
  })
  vim.api.nvim_create_autocmd('BufWipeout', {
    group = group, buffer = bufnr,
    callback = function()
      local st = state[bufnr]
      if st then
        st.timer:close()
      end
      state[bufnr] = nil
    end,
  })
  M.schedule(bufnr)
end

return M
