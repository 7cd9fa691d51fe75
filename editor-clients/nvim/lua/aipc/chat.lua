-- :AipcChat {instruction} on a selection: aipc/inlineChat, the answer streamed into a floating
-- window from aipc/chatChunk notifications; :AipcChatAccept applies the returned WorkspaceEdit.
local config = require('aipc.config')
local util = require('aipc.util')

local M = {}

-- The one chat at a time: { client, id, bufnr, float_buf, win, instruction, text, result, done }
M.current = nil

local function render(chat, footer)
  if not (chat.float_buf and vim.api.nvim_buf_is_valid(chat.float_buf)) then
    return
  end
  local lines = { '> ' .. chat.instruction, '' }
  vim.list_extend(lines, vim.split(chat.text, '\n', { plain = true }))
  if footer then
    vim.list_extend(lines, { '', footer })
  end
  vim.bo[chat.float_buf].modifiable = true
  vim.api.nvim_buf_set_lines(chat.float_buf, 0, -1, false, lines)
  vim.bo[chat.float_buf].modifiable = false
  if chat.win and vim.api.nvim_win_is_valid(chat.win) then
    pcall(vim.api.nvim_win_set_cursor, chat.win, { #lines, 0 })
  end
end

local function open_float(chat)
  local opts = config.options.chat
  chat.float_buf = vim.api.nvim_create_buf(false, true)
  vim.bo[chat.float_buf].filetype = 'markdown'
  vim.bo[chat.float_buf].bufhidden = 'wipe'
  local width = math.min(opts.width, vim.o.columns - 4)
  local height = math.min(opts.height, math.max(3, vim.o.lines - 4))
  chat.win = vim.api.nvim_open_win(chat.float_buf, false, {
    relative = 'editor', row = 1, col = math.max(0, vim.o.columns - width - 2), width = width, height = height,
    style = 'minimal', border = opts.border, title = ' aipc chat ', title_pos = 'center',
  })
  vim.wo[chat.win].wrap = true
  vim.keymap.set('n', 'q', M.discard, { buffer = chat.float_buf, desc = 'aipc: close the chat (cancels it)' })
  vim.keymap.set('n', 'a', M.accept, { buffer = chat.float_buf, desc = 'aipc: apply the chat edit' })
end

-- Handler for the server's aipc/chatChunk notifications (registered in lsp/aipc_lsp.lua).
function M.on_chunk(_, params, ctx)
  local chat = M.current
  if not chat or chat.done or params.id ~= chat.id or ctx.client_id ~= chat.client.id then
    return
  end
  chat.text = chat.text .. params.text
  chat.chunks = (chat.chunks or 0) + 1
  render(chat)
end

-- The LSP range of a command's range: a linewise selection by default, the '< '> marks when
-- the last visual selection was characterwise and matches these lines.
local function selection_range(bufnr, line1, line2, enc)
  local vs, ve = vim.api.nvim_buf_get_mark(bufnr, '<'), vim.api.nvim_buf_get_mark(bufnr, '>')
  if vim.fn.visualmode() == 'v' and vs[1] == line1 and ve[1] == line2 then
    local last = vim.api.nvim_buf_get_lines(bufnr, ve[1] - 1, ve[1], false)[1] or ''
    -- '> is the last selected byte; include that whole character.
    local end_col = math.min(#last, ve[2] + vim.str_utf_end(last, ve[2] + 1) + 1)
    return { start = util.to_lsp(bufnr, vs[1] - 1, vs[2], enc), ['end'] = util.to_lsp(bufnr, ve[1] - 1, end_col, enc) }
  end
  local count = vim.api.nvim_buf_line_count(bufnr)
  local finish
  if line2 < count then
    finish = { line = line2, character = 0 }
  else
    finish = util.to_lsp(bufnr, line2 - 1, math.huge, enc)
  end
  return { start = { line = line1 - 1, character = 0 }, ['end'] = finish }
end

function M.start(instruction, line1, line2)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = util.client(bufnr)
  if not client then
    vim.notify('aipc: the aipc_lsp server is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  if instruction == nil or vim.trim(instruction) == '' then
    vim.notify('aipc: usage :AipcChat {instruction}', vim.log.levels.WARN)
    return
  end
  M.discard()
  local chat = { client = client, bufnr = bufnr, instruction = instruction, text = '' }
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    range = selection_range(bufnr, line1, line2, client.offset_encoding),
    instruction = instruction,
  }
  open_float(chat)
  render(chat, '(thinking... q cancels)')
  local ok, id = client:request('aipc/inlineChat', params, function(err, result)
    if M.current ~= chat then
      return -- discarded or replaced meanwhile
    end
    chat.done = true
    if err then
      render(chat, 'aipc: ' .. (err.message or vim.inspect(err)))
      return
    end
    chat.result = result
    chat.text = result.text
    local timing = string.format('first token %d ms, total %d ms',
      result.firstTokenMs or 0, result.totalMs or 0)
    if result.edit ~= vim.NIL and result.edit then
      render(chat, timing .. ' | :AipcChatAccept (a) applies, q closes')
    else
      render(chat, timing .. (result.editDropped and (' | ' .. result.editDropped) or ''))
    end
  end, bufnr)
  if not ok then
    render(chat, 'aipc: the request could not be sent')
    return
  end
  chat.id = id
  M.current = chat
  return chat
end

function M.accept()
  local chat = M.current
  if not chat or not chat.result or not chat.result.edit or chat.result.edit == vim.NIL then
    vim.notify('aipc: no chat edit to apply', vim.log.levels.WARN)
    return false
  end
  vim.lsp.util.apply_workspace_edit(chat.result.edit, chat.client.offset_encoding)
  M.close()
  return true
end

function M.close()
  local chat = M.current
  M.current = nil
  if chat and chat.win and vim.api.nvim_win_is_valid(chat.win) then
    vim.api.nvim_win_close(chat.win, true)
  end
end

-- Close the window; a chat still generating is cancelled.
function M.discard()
  local chat = M.current
  if chat and not chat.done and chat.id then
    pcall(function() chat.client:cancel_request(chat.id) end)
  end
  M.close()
end

return M
