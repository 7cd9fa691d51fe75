local M = {}

M.NAME = 'aipc_lsp'

function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = M.NAME })[1]
end

-- LSP position (in the client's offset encoding) -> 0-based row and byte column.
function M.to_byte(bufnr, pos, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, pos.line, pos.line + 1, false)[1] or ''
  return pos.line, vim.str_byteindex(line, encoding, pos.character, false)
end

-- 0-based row and byte column -> LSP position.
function M.to_lsp(bufnr, row, col, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  col = math.min(col, #line)
  return { line = row, character = vim.str_utfindex(line, encoding, col, false) }
end

return M
