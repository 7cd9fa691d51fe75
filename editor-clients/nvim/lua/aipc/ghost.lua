-- Ghost text on Neovim 0.11: textDocument/inlineCompletion as a raw request, drawn with extmarks.
-- (0.12+ has vim.lsp.inline_completion; init.lua uses that there.)
local config = require('aipc.config')
local util = require('aipc.util')

local M = {}
M.ns = vim.api.nvim_create_namespace('aipc_ghost')

-- Per buffer: { timer, request = {client, id}, shown = {row, col, text, tick} }
local state = {}

local function buf_state(bufnr)
  state[bufnr] = state[bufnr] or {}
  return state[bufnr]
end

local function cancel_request(st)
  if st.request then
    pcall(function() st.request.client:cancel_request(st.request.id) end)
    st.request = nil
  end
end

function M.clear(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local st = buf_state(bufnr)
  st.shown = nil
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

-- What is shown at the cursor, or nil.
function M.current(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  return buf_state(bufnr).shown
end

local function draw(bufnr, row, col, text)
  M.clear(bufnr)
  if text == '' then
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  local hl = config.options.ghost.hl_group
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], hl } }
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.ns, row, col, {
    virt_text = { { lines[1], hl } },
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
  })
  buf_state(bufnr).shown = { row = row, col = col, text = text, tick = vim.api.nvim_buf_get_changedtick(bufnr) }
end

-- Ask the server for a suggestion at the cursor now.
function M.request(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = util.client(bufnr)
  if not client then
    return
  end
  local st = buf_state(bufnr)
  cancel_request(st)
  local win = vim.api.nvim_get_current_win()
  if vim.api.nvim_win_get_buf(win) ~= bufnr then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  row = row - 1
  local enc = client.offset_encoding
  local position = util.to_lsp(bufnr, row, col, enc)
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = position,
    context = { triggerKind = 2 },
  }
  local ok, id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if st.request and st.request.id == id then
      st.request = nil
    end
    if err or not result or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    -- The user typed or moved on: the answer is for a past state.
    local cur = vim.api.nvim_win_is_valid(win) and vim.api.nvim_win_get_cursor(win) or { -1, -1 }
    if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick or cur[1] - 1 ~= row or cur[2] ~= col then
      return
    end
    local item = (result.items or result)[1]
    if not item then
      return
    end
    local text = type(item.insertText) == 'table' and item.insertText.value or item.insertText
    if item.range then
      -- Ghost text shows what goes after the cursor; a range starting earlier repeats typed text.
      local srow, scol = util.to_byte(bufnr, item.range.start, enc)
      if srow ~= row or scol > col then
        return
      end
      local typed = vim.api.nvim_buf_get_text(bufnr, srow, scol, row, col, {})[1] or ''
      if text:sub(1, #typed) ~= typed then
        return
      end
      text = text:sub(#typed + 1)
    end
    draw(bufnr, row, col, text)
  end, bufnr)
  if ok then
    st.request = { client = client, id = id }
  end
end

-- Debounced request, for TextChangedI.
function M.schedule(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local st = buf_state(bufnr)
  M.clear(bufnr)
  cancel_request(st)
  st.timer = st.timer or vim.uv.new_timer()
  st.timer:stop()
  st.timer:start(config.options.ghost.debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr then
      M.request(bufnr)
    end
  end))
end

-- Insert `piece` (the head of the shown suggestion) at the cursor and keep showing the rest.
local function insert(bufnr, piece)
  local shown = M.current(bufnr)
  local lines = vim.split(piece, '\n', { plain = true })
  vim.api.nvim_buf_set_text(bufnr, shown.row, shown.col, shown.row, shown.col, lines)
  local row = shown.row + #lines - 1
  local col = (#lines == 1 and shown.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  local rest = shown.text:sub(#piece + 1)
  if rest ~= '' then
    draw(bufnr, row, col, rest)
  else
    M.clear(bufnr)
  end
end

-- The head of `text` that "next word" takes: spaces and a word, else spaces and a run of
-- punctuation, else the line break.
local function next_word(text)
  return text:match('^[ \t]*[%w_]+') or text:match('^[ \t]*[^%w_%s]+') or text:match('^[ \t]*\n?')
end

local function next_line(text)
  return text:match('^[^\n]*\n?')
end

local function accept_with(head)
  return function()
    local bufnr = vim.api.nvim_get_current_buf()
    local shown = M.current(bufnr)
    if not shown then
      return false
    end
    local piece = head and head(shown.text) or shown.text
    insert(bufnr, piece ~= '' and piece or shown.text)
    return true
  end
end

M.accept = accept_with(nil)
M.accept_word = accept_with(next_word)
M.accept_line = accept_with(next_line)

function M.attach(bufnr)
  local group = vim.api.nvim_create_augroup('aipc_ghost_' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd('TextChangedI', {
    group = group, buffer = bufnr,
    callback = function()
      local shown = M.current(bufnr)
      if shown and shown.tick == vim.api.nvim_buf_get_changedtick(bufnr) then
        return -- our own partial accept: keep showing the rest
      end
      if config.options.ghost.enabled then
        M.schedule(bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = group, buffer = bufnr,
    callback = function()
      local shown = M.current(bufnr)
      if not shown then
        return
      end
      local row, col = unpack(vim.api.nvim_win_get_cursor(0))
      if row - 1 ~= shown.row or col ~= shown.col or vim.api.nvim_buf_get_changedtick(bufnr) ~= shown.tick then
        M.clear(bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group, buffer = bufnr,
    callback = function()
      cancel_request(buf_state(bufnr))
      M.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd('BufWipeout', {
    group = group, buffer = bufnr,
    callback = function()
      local st = state[bufnr]
      if st and st.timer then
        st.timer:close()
      end
      state[bufnr] = nil
    end,
  })
end

return M
